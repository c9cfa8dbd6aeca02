"""Benchmark: a *proxy* for cross-site shift — lung models on held-out Montgomery cases under simulated
acquisition changes.

**This is a proxy, not a second hospital.** The goal for ``lung-cxr`` (≥ 0.95 mean Dice on a
hospital it never saw) can only be checked on another site's data (e.g. Shenzhen), which is not in
``../shared/data``. What this benchmark can do honestly is take the models' own held-out fold (the
card's ``split.val_case_ids``: 28 Montgomery patients the models never trained on) and re-render each
image the way another site's detector and software might: different tone curve (gamma), contrast
window, exposure offset, sharpness (blur), noise, resolution, and field of view (crop / black border).
Every shift is deterministic (fixed parameters; noise from a per-case seed), so two models see
exactly the same inputs. It measures robustness to these specific shifts, not anatomy, population or
disease differences between hospitals.

Each shifted image is re-quantised to 8 bits (as a stored PNG would be) and passed to the engine's
:class:`engine.inference.Predictor` as a float (C, H, W) image in [0, 1], so the model card's own
preprocessing (resize, CLAHE, normalisation) runs unchanged; masks come back at the shifted image's
size and are scored with :class:`engine.metrics.MetricAccumulator` (kaggle empty policy; every
held-out case has lungs) against the ground truth shifted the same way (crop / pad only). The
geometric shifts move the mask with the image; intensity shifts leave it alone.

Models are given as ``LABEL=WHERE``: ``WHERE`` is a weights name (``lung-cxr``), a weights or run
``best/`` folder, or ``git:REV`` = ``weights/lung-cxr`` as committed at revision ``REV`` (so the
shipped model before a retrain can be compared with the one after). All models must share the same
held-out cases (the script refuses otherwise). Run::

    python bench/lung_shift.py [--data ../shared/data/montgomery-lung]
                               [--model old=git:REV --model new=lung-cxr] [--out bench/results/lung_shift.json]

Prints a table (mean Dice per shift and model) and writes ``bench/results/lung_shift.json``. Without
``../shared/data/montgomery-lung`` it prints why and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Timer, load_avg, save_result  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "montgomery-lung"


@dataclass(frozen=True)
class Shift:
    """One deterministic acquisition shift.

    Attributes:
        name: short id used in the table and JSON.
        what: one line saying what it simulates.
        fn: ``(img (H,W) float32 in [0,1], mask (H,W) uint8, rng) -> (img', mask')``; sizes may change
            (crop / pad), the mask moves with the image.
    """

    name: str
    what: str
    fn: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _scale(img: np.ndarray) -> float:
    """Pixel lengths below are for a 512-px image; scale them to this image's short side."""
    return min(img.shape) / 512.0


def _gamma(g: float):
    return lambda x, m, rng: (np.power(x, g), m)


def _contrast(f: float):
    return lambda x, m, rng: (0.5 + f * (x - 0.5), m)


def _window(lo: float, hi: float):
    return lambda x, m, rng: ((x - lo) / (hi - lo), m)


def _offset(d: float):
    return lambda x, m, rng: (x + d, m)


def _blur(sigma512: float):
    def f(x, m, rng):
        from scipy import ndimage

        return ndimage.gaussian_filter(x, sigma512 * _scale(x), mode="reflect"), m
    return f


def _noise(std: float):
    return lambda x, m, rng: (x + rng.normal(0.0, std, x.shape).astype(np.float32), m)


def _lowres(factor: int):
    def f(x, m, rng):
        import cv2

        h, w = x.shape
        small = cv2.resize(x, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), m
    return f


def _crop(frac: float):
    def f(x, m, rng):
        h, w = x.shape
        dy, dx = int(round(h * frac)), int(round(w * frac))
        return x[dy:h - dy, dx:w - dx], m[dy:h - dy, dx:w - dx]
    return f


def _pad(frac: float):
    def f(x, m, rng):
        h, w = x.shape
        dy, dx = int(round(h * frac)), int(round(w * frac))
        return (np.pad(x, ((dy, dy), (dx, dx)), constant_values=0.0),
                np.pad(m, ((dy, dy), (dx, dx)), constant_values=0))
    return f


def _chain(*fns):
    def f(x, m, rng):
        for fn in fns:
            x, m = fn(x, m, rng)
            x = np.clip(x, 0.0, 1.0)
        return x, m
    return f


SHIFTS: tuple[Shift, ...] = (
    Shift("none", "the held-out images as stored (reference)", lambda x, m, rng: (x, m)),
    Shift("gamma-0.6", "tone curve x^0.6: brighter mid-tones (another site's LUT)", _gamma(0.6)),
    Shift("gamma-1.6", "tone curve x^1.6: darker mid-tones", _gamma(1.6)),
    Shift("contrast-0.6", "contrast compressed to 60 % around mid-grey (flat, washed-out rendering)", _contrast(0.6)),
    Shift("window-0.2-0.8", "narrower display window [0.2, 0.8] → [0, 1], clipping shadows and highlights",
          _window(0.2, 0.8)),
    Shift("exposure+0.15", "brightness offset +0.15 (over-exposed / lifted blacks), clipped", _offset(0.15)),
    Shift("blur-2px", "Gaussian blur sigma 2 px at 512² (softer detector / reconstruction kernel)", _blur(2.0)),
    Shift("blur-4px", "Gaussian blur sigma 4 px at 512²", _blur(4.0)),
    Shift("noise-0.04", "additive Gaussian noise, std 0.04 of the range (low dose), seeded per case", _noise(0.04)),
    Shift("lowres-4x", "down-sampled 4× (area) then up-sampled (bilinear): a low-resolution source", _lowres(4)),
    Shift("crop-10pct", "10 % cropped from every border (tighter field of view); mask cropped too", _crop(0.10)),
    Shift("pad-12.5pct", "black border of 12.5 % on every side (collimation / wider field); mask padded",
          _pad(0.125)),
    Shift("combo", "gamma 1.4, contrast 0.8, blur 1.5 px, noise 0.02 together",
          _chain(_gamma(1.4), _contrast(0.8), _blur(1.5), _noise(0.02))),
)


def apply_shift(shift: Shift, img: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``shift`` to one image.

    Args:
        img: float32 (1, H, W) in [0, 1] (grey; the Montgomery images are single-channel).
        mask: uint8 (H, W) ground truth.
        seed: per-case seed (noise).

    Returns:
        ``(float32 (1, H', W') in [0, 1] quantised to 8-bit levels, uint8 (H', W') mask)``.
    """
    x = np.asarray(img, np.float32)[0]
    rng = np.random.default_rng(seed)
    y, m = shift.fn(x, np.asarray(mask), rng)
    y = np.round(np.clip(y, 0.0, 1.0) * 255.0) / 255.0
    return y.astype(np.float32)[None], np.ascontiguousarray(m)


def _resolve_model(where: str, tmp: Path) -> str:
    """``git:REV`` → a temporary folder with ``weights/lung-cxr`` at REV; anything else as given."""
    if not where.startswith("git:"):
        return where
    rev = where[4:]
    dest = tmp / f"git-{rev}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("card.json", "model.safetensors"):
        out = subprocess.run(["git", "show", f"{rev}:weights/lung-cxr/{f}"], cwd=REPO, capture_output=True,
                             timeout=60)
        if out.returncode:
            raise SystemExit(f"git show {rev}:weights/lung-cxr/{f} failed: {out.stderr.decode(errors='replace')}")
        (dest / f).write_bytes(out.stdout)
    return str(dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the Montgomery folder (paired layout)")
    ap.add_argument("--model", action="append", metavar="LABEL=WHERE",
                    help="model to score (repeatable): weights name, folder, or git:REV (weights/lung-cxr at REV); "
                         "default: shipped=lung-cxr")
    ap.add_argument("--shifts", help="comma-separated subset of: " + ", ".join(s.name for s in SHIFTS))
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", help="result JSON (default bench/results/lung_shift.json)")
    args = ap.parse_args()

    data = Path(args.data)
    if not (data / "images").is_dir():
        print(f"skipped: {data} not found (the Montgomery set lives in ../shared/data; nothing to measure)")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.datasets import open_dataset
    from engine.evaluation import class_mapping
    from engine.inference import Predictor
    from engine.metrics import MetricAccumulator

    shifts = list(SHIFTS)
    if args.shifts:
        want = [s.strip() for s in args.shifts.split(",") if s.strip()]
        unknown = [w for w in want if w not in {s.name for s in SHIFTS}]
        if unknown:
            raise SystemExit(f"unknown shift(s) {unknown}; have {[s.name for s in SHIFTS]}")
        shifts = [s for s in SHIFTS if s.name in want]
        if "none" not in want:
            shifts.insert(0, SHIFTS[0])
    specs = []
    for spec in args.model or ["shipped=lung-cxr"]:
        label, sep, where = spec.partition("=")
        if not sep or not label or not where:
            raise SystemExit(f"--model {spec!r}: expected LABEL=WHERE")
        specs.append((label, where))

    ds = open_dataset(data, options={"label_names": ["lung"]})
    with tempfile.TemporaryDirectory() as tmp:
        preds = {label: Predictor.from_weights(_resolve_model(where, Path(tmp)), device="cpu", gate=None)
                 for label, where in specs}
    val_sets = {label: list((p.card.training or {}).get("split", {}).get("val_case_ids") or [])
                for label, p in preds.items()}
    first = next(iter(val_sets.values()))
    if not first or any(sorted(v) != sorted(first) for v in val_sets.values()):
        raise SystemExit("the models do not share one recorded held-out fold (card split.val_case_ids); "
                         "this comparison would not be on the same unseen cases")
    case_ids = [c for c in first if c in ds]
    if len(case_ids) != len(first):
        raise SystemExit(f"{len(first) - len(case_ids)} held-out case(s) are missing from {data}")
    base = [(cid, ds.load_image_float(cid), ds.load_mask(cid)) for cid in case_ids]

    results: dict[str, dict[str, dict]] = {label: {} for label in preds}
    seconds: dict[str, float] = {}
    for shift in shifts:
        shifted = [apply_shift(shift, img, gt, seed=1000 + i) for i, (_, img, gt) in enumerate(base)]
        for label, pred in preds.items():
            lut = class_mapping(pred.card.labels, ds.labels)
            acc = MetricAccumulator(ds.num_classes, ds.labels, empty_policy="kaggle")
            with Timer() as t:
                out = pred.predict_many([x for x, _ in shifted])
            seconds[label] = seconds.get(label, 0.0) + t.seconds
            per_case = {}
            for (cid, _, _), (_, gt), p in zip(base, shifted, out):
                m = acc.add(cid, lut[p.mask], gt)
                per_case[cid] = float(m[1].dice)
            s = acc.summary()
            vals = np.array(list(per_case.values()))
            results[label][shift.name] = {"mean_dice": s["mean_foreground"]["dice"], "min_dice": float(vals.min()),
                                          "n_below_0.95": int((vals < 0.95).sum()), "per_case": per_case}
        print(f"{shift.name:16s} " + "  ".join(f"{lab} {results[lab][shift.name]['mean_dice']:.4f}" for lab in preds),
              flush=True)

    shifted_names = [s.name for s in shifts if s.name != "none"]
    summary = {}
    for label in preds:
        r = results[label]
        means = [r[n]["mean_dice"] for n in shifted_names]
        summary[label] = {"plain_mean_dice": r["none"]["mean_dice"],
                          "proxy_mean_dice": float(np.mean(means)) if means else None,
                          "worst_shift": min(shifted_names, key=lambda n: r[n]["mean_dice"]) if means else None,
                          "worst_shift_mean_dice": float(min(means)) if means else None,
                          "predict_seconds": round(seconds[label], 2)}
    models = {label: {"where": where, "name": preds[label].card.name,
                      "weights_sha256": preds[label].card.tensors_sha256,
                      "preprocess": preds[label].card.preprocess.to_dict(),
                      "augment": ((preds[label].card.training or {}).get("config") or {}).get("augment")}
              for label, where in specs}

    labels = list(preds)
    print()
    print("PROXY for cross-site shift (simulated acquisition changes on the held-out Montgomery fold; "
          "not a second hospital)")
    print(f"held-out cases: {len(case_ids)} (card split.val_case_ids); mean Dice, kaggle policy, original size")
    print("| shift | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for s in shifts:
        print(f"| {s.name} | " + " | ".join(f"{results[lab][s.name]['mean_dice']:.4f}" for lab in labels) + " |")
    print("| **mean over shifts** | " + " | ".join(f"{summary[lab]['proxy_mean_dice']:.4f}" for lab in labels) + " |")

    doc = {
        "what": "PROXY for cross-site shift: deterministic simulated acquisition shifts applied to the models' "
                "held-out Montgomery fold. Not a second hospital (no other site's data is available here).",
        "data": str(data), "split": "card split.val_case_ids (grouped 5-fold, fold 0, seed 0)",
        "n_cases": len(case_ids), "case_ids": case_ids, "empty_policy": "kaggle",
        "resolution": "shifted image's own size (masks restored by the Predictor)",
        "quantisation": "shifted images rounded to 8-bit levels",
        "shifts": [{"name": s.name, "what": s.what} for s in shifts],
        "models": models, "summary": summary, "results": results, "load_average_after": load_avg(),
    }
    path = save_result("lung_shift", doc, path=Path(args.out) if args.out else None)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
